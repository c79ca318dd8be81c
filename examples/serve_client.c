/* Client for tf-serve in C with libcurl: POST an image to /detect, print the JSON answer.
 *
 *   cc serve_client.c -o serve_client -lcurl
 *   ./serve_client photo.jpg [http://127.0.0.1:8000 [TIMEOUT_S]]
 *
 * TIMEOUT_S bounds the whole request (default 600: a large photo on a CPU replica takes
 * minutes; 0 waits as long as the server works). Connecting gives up after 10 s.
 *
 * Exit status: 0 success (HTTP 200: the JSON answer on stdout); 1 the server refused the image
 * (4xx/5xx: its JSON error is printed on stderr) or answered anything but 200, the server
 * could not be reached, or the file could not be read; 2 bad arguments.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct buffer {
    char *data;
    size_t size;
};

static size_t append(char *chunk, size_t one, size_t count, void *user) {
    struct buffer *out = user;
    size_t n = one * count;
    char *grown = realloc(out->data, out->size + n + 1);
    if (grown == NULL) return 0; /* makes curl fail with CURLE_WRITE_ERROR */
    memcpy(grown + out->size, chunk, n);
    out->data = grown;
    out->size += n;
    out->data[out->size] = '\0';
    return n;
}

static char *read_file(const char *path, long *size) {
    FILE *f = fopen(path, "rb");
    char *data = NULL;
    if (f == NULL) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (*size = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0) {
        data = malloc((size_t)*size);
        if (data != NULL && fread(data, 1, (size_t)*size, f) != (size_t)*size) {
            free(data);
            data = NULL;
        }
    }
    fclose(f);
    return data;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s IMAGE [SERVER_URL (default http://127.0.0.1:8000) "
                        "[TIMEOUT_S (default 600, 0: none)]]\n", argv[0]);
        return 2;
    }
    long timeout_s = 600;
    if (argc == 4) {
        char *end = NULL;
        timeout_s = strtol(argv[3], &end, 10);
        if (end == argv[3] || *end != '\0' || timeout_s < 0) {
            fprintf(stderr, "serve_client: TIMEOUT_S must be a whole number of seconds >= 0, got '%s'\n",
                    argv[3]);
            return 2;
        }
    }
    /* the server's routes are /detect and /anonymize: a base URL's trailing '/' is dropped */
    const char *base = argc >= 3 ? argv[2] : "http://127.0.0.1:8000";
    size_t base_length = strlen(base);
    while (base_length > 0 && base[base_length - 1] == '/') base_length--;
    long size = 0;
    char *image = read_file(argv[1], &size);
    if (image == NULL) {
        fprintf(stderr, "serve_client: cannot read %s\n", argv[1]);
        return 1;
    }
    char url[2048];
    if (base_length > sizeof url) base_length = sizeof url; /* refused below */
    int length = snprintf(url, sizeof url, "%.*s/detect", (int)base_length, base);
    if (length < 0 || (size_t)length >= sizeof url) {
        fprintf(stderr, "serve_client: the server URL is longer than %zu characters\n", sizeof url - 8);
        free(image);
        return 2;
    }

    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *curl = curl_easy_init();
    struct buffer answer = {NULL, 0};
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/octet-stream");
    long status = 0;
    CURLcode rc = CURLE_FAILED_INIT;
    if (curl != NULL) {
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, image);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)size);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, append);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, &answer);
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
        curl_easy_setopt(curl, CURLOPT_TIMEOUT, timeout_s);
        rc = curl_easy_perform(curl);
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    }
    int exit_code = 0;
    if (rc != CURLE_OK) {
        fprintf(stderr, "serve_client: %s: %s\n", url, curl_easy_strerror(rc));
        exit_code = 1;
    } else if (status != 200) { /* an error, or a redirect or other answer that is no result */
        fprintf(stderr, "serve_client: HTTP %ld: %s\n", status, answer.data ? answer.data : "");
        exit_code = 1;
    } else {
        printf("%s\n", answer.data ? answer.data : "");
    }
    curl_slist_free_all(headers);
    if (curl != NULL) curl_easy_cleanup(curl);
    curl_global_cleanup();
    free(answer.data);
    free(image);
    return exit_code;
}
