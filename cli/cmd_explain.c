/* dbkit explain: not written yet. */
#include "cli.h"

int cmd_explain(cli *c, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return cli_usage(c, "explain is not implemented yet");
}
