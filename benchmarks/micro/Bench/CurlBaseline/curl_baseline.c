#include "curl_baseline.h"
#include <curl/curl.h>
#include <stdlib.h>

static size_t discard(char *ptr, size_t size, size_t n, void *ud) {
    (void)ptr; (void)ud;
    return size * n;
}

static CURLM *multi;
static CURL **handles;
static int nhandles;

static void setup(const char *url, int width) {
    if (multi) return;
    curl_global_init(CURL_GLOBAL_ALL);
    multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, 1024L);
    handles = calloc((size_t)width, sizeof(CURL *));
    nhandles = width;
    for (int i = 0; i < width; i++) {
        CURL *h = curl_easy_init();
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
        handles[i] = h;
    }
}

int curl_baseline_run(const char *url, int total, int width) {
    setup(url, width);
    if (width > nhandles) width = nhandles;
    int started = 0, ok = 0, done = 0, running = 0;
    for (int i = 0; i < width && started < total; i++, started++) curl_multi_add_handle(multi, handles[i]);
    while (done < total) {
        curl_multi_perform(multi, &running);
        CURLMsg *m;
        int q;
        while ((m = curl_multi_info_read(multi, &q))) {
            if (m->msg != CURLMSG_DONE) continue;
            CURL *h = m->easy_handle;
            long status = 0;
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
            if (m->data.result == CURLE_OK && status == 200) ok++;
            done++;
            curl_multi_remove_handle(multi, h);
            if (started < total) {
                started++;
                curl_multi_add_handle(multi, h);
            }
        }
        if (done < total) curl_multi_poll(multi, NULL, 0, 1000, NULL);
    }
    return ok;
}
