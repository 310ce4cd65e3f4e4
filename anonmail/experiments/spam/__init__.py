"""The spam experiment (`anonmail sim spam`): a spammer without permits against permit-gated
inboxes and stamp-priced request inboxes (DESIGN.md §6): model, run, report, command."""
