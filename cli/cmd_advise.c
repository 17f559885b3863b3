/* dbkit advise: not written yet. */
#include "cli.h"

int cmd_advise(cli *c, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_usage(c, "advise is not implemented yet");
}
