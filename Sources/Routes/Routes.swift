// Routes module
