/*
 * main.c — polygate's entry point.
 */
#include <stdio.h>
#include <string.h>

#include "adapters/ad.h"
#include "config/cf_config.h"
#include "gateway/gw_server.h"

static void usage(void)
{
    fprintf(stderr, "usage: polygate [-c config.yaml] [-t]\n"
                    "  -c FILE  configuration (default config/polygate.yaml)\n"
                    "  -t       check the configuration and exit\n");
}

int main(int argc, char **argv)
{
    const char *path = "config/polygate.yaml";
    int test = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            path = argv[++i];
        } else if (strcmp(argv[i], "-t") == 0) {
            test = 1;
        } else {
            usage();
            return 2;
        }
    }
    if (test) {
        char err[1024];
        ad_register_builtin();
        struct cf_config *cf = cf_config_load(path, err, sizeof(err));
        if (cf == NULL) {
            fprintf(stderr, "polygate: %s\n", err);
            return 1;
        }
        printf("polygate: %s is valid (%zu backends, %zu domains)\n", path, cf->nbackends,
               cf->ndomains);
        cf_config_unref(cf);
        return 0;
    }
    return gw_server_run(path);
}
