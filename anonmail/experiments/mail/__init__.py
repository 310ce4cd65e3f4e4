"""The mail delivery experiment (`anonmail sim mail`): model, workload, run, report, command."""
