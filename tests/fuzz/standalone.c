/*
 * standalone.c — runs a fuzz harness over files and folders without
 * libFuzzer, so that `make test` replays the corpus and every regression
 * input with the normal (or sanitizer) build.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int nrun;

static void run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
    size_t got = fread(buf, 1, (size_t)(n > 0 ? n : 0), f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, got);
    free(buf);
    nrun++;
}

static void run_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        return;
    }
    if (!S_ISDIR(st.st_mode)) {
        run_file(path);
        return;
    }
    DIR *d = opendir(path);
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') {
            continue;
        }
        char p[4096];
        snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
        run_path(p);
    }
    if (d != NULL) {
        closedir(d);
    }
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        run_path(argv[i]);
    }
    printf("%s: %d inputs replayed, no crash\n", argv[0], nrun);
    return 0;
}
