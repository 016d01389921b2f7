/* `wsplice deny add|del CIDR | deny list [--bpffs DIR | -c FILE]`: the XDP
 * guard's deny list, changed live through its pinned map. */
#ifndef WSPLICE_DENY_CLI_H
#define WSPLICE_DENY_CLI_H

/* argv[1] is "deny". The exit status: 0, 1 (failed), 2 (usage). */
int deny_command(int argc, char **argv);

#endif
