/* dbkit check: not written yet. */
#include "cli.h"

int cmd_check(cli *c, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_usage(c, "check is not implemented yet");
}
