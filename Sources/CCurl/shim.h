// Typed wrappers around libcurl's variadic calls, which Swift cannot call directly
// (the same approach as swift-corelibs-foundation's CFURLSessionInterface.h).
#ifndef SWITCHBOARD_CCURL_SHIM_H
#define SWITCHBOARD_CCURL_SHIM_H
#include <curl/curl.h>

static inline CURLcode CCurl_easy_setopt_long(CURL *h, CURLoption o, long v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode CCurl_easy_setopt_off(CURL *h, CURLoption o, curl_off_t v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode CCurl_easy_setopt_string(CURL *h, CURLoption o, const char *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode CCurl_easy_setopt_pointer(CURL *h, CURLoption o, void *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode CCurl_easy_setopt_slist(CURL *h, CURLoption o, struct curl_slist *v) { return curl_easy_setopt(h, o, v); }

typedef size_t (*CCurl_data_callback)(char *ptr, size_t size, size_t nmemb, void *userdata);
static inline CURLcode CCurl_easy_setopt_datafunction(CURL *h, CURLoption o, CCurl_data_callback f) { return curl_easy_setopt(h, o, f); }

static inline CURLcode CCurl_easy_getinfo_long(CURL *h, CURLINFO i, long *v) { return curl_easy_getinfo(h, i, v); }
static inline CURLcode CCurl_easy_getinfo_pointer(CURL *h, CURLINFO i, void **v) { return curl_easy_getinfo(h, i, v); }

typedef int (*CCurl_closesocket_callback)(void *clientp, curl_socket_t item);
static inline CURLcode CCurl_easy_setopt_closesocketfunction(CURL *h, CCurl_closesocket_callback f) { return curl_easy_setopt(h, CURLOPT_CLOSESOCKETFUNCTION, f); }

typedef int (*CCurl_socket_callback)(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp);
typedef int (*CCurl_timer_callback)(CURLM *multi, long timeout_ms, void *userp);
static inline CURLSHcode CCurl_share_setopt_lock_data(CURLSH *s, CURLSHoption o, curl_lock_data v) { return curl_share_setopt(s, o, v); }
static inline CURLMcode CCurl_multi_setopt_long(CURLM *m, CURLMoption o, long v) { return curl_multi_setopt(m, o, v); }
static inline CURLMcode CCurl_multi_setopt_pointer(CURLM *m, CURLMoption o, void *v) { return curl_multi_setopt(m, o, v); }
static inline CURLMcode CCurl_multi_setopt_socketfunction(CURLM *m, CCurl_socket_callback f) { return curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, f); }
static inline CURLMcode CCurl_multi_setopt_timerfunction(CURLM *m, CCurl_timer_callback f) { return curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, f); }

/// The easy handle of a finished transfer message (msg->easy_handle), and its result code.
static inline CURL *CCurl_msg_easy(CURLMsg *m) { return m->easy_handle; }
static inline CURLcode CCurl_msg_result(CURLMsg *m) { return m->data.result; }
static inline int CCurl_msg_is_done(CURLMsg *m) { return m->msg == CURLMSG_DONE; }

#endif
