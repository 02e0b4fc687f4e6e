// Flows module
