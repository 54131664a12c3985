/* tcpkeep-tool: dispatches `stats` and `inspect` (see tool.h). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "tool.h"

static const char tool_help[] =
    "usage: tcpkeep stats PATH\n"
    "       tcpkeep inspect PID [--json]\n"
    "\n"
    "  stats PATH        print the TCPKEEP_STATS file PATH as a table\n"
    "  inspect PID       list the TCP sockets of process PID: addresses, state,\n"
    "                    the keepalive options the kernel holds, idle times, and\n"
    "                    whether libtcpkeep is loaded in it\n"
    "  inspect PID --json  the same as a JSON array, one object per socket\n"
    "\n"
    "Exit status: 0 done, 1 failed (the reason on stderr), 2 bad usage.\n";

/* "tcpkeep: CMD: " and the message on stderr, after whatever stdout holds. */
__attribute__((format(printf, 2, 0)))
static void report(const char *cmd, const char *fmt, va_list ap)
{
    fflush(stdout);
    fprintf(stderr, "tcpkeep: %s: ", cmd);
    vfprintf(stderr, fmt, ap);
}

void tool_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report(cmd, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int tool_usage_error(const char *cmd, const char *usage, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report(cmd, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n%s\n", usage);
    return TOOL_USAGE;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(tool_help, stderr);
        return TOOL_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        fputs(tool_help, stdout);
        return TOOL_OK;
    }
    if (strcmp(cmd, "stats") == 0)
        return cmd_stats(argc - 1, argv + 1);
    if (strcmp(cmd, "inspect") == 0)
        return cmd_inspect(argc - 1, argv + 1);
    fprintf(stderr, "tcpkeep: unknown command \"%s\"\n%s", cmd, tool_help);
    return TOOL_USAGE;
}
