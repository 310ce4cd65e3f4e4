"""The linkage experiment (`anonmail sim linkage`): can an inbox replica, from the APPENDs it
accepts, group one sender's messages (DESIGN.md §6, §7; threat T-PERMIT-LINK)? Model, run,
report, command."""
