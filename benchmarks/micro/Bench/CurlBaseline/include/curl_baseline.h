#ifndef CURL_BASELINE_H
#define CURL_BASELINE_H

/// A minimal libcurl client as the floor for the transfer path (BENCHMARKS.md):
/// one multi handle, `width` easy handles re-added as each transfer completes,
/// driven by curl_multi_perform + curl_multi_poll on the calling thread, the
/// body discarded. Runs `total` GETs of `url`; returns the number that answered
/// 200 (anything else means the figure is invalid).
int curl_baseline_run(const char *url, int total, int width);

#endif
