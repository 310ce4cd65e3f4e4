"""`anonmail demo` (command.py): a local network of real nodes, one anonymous mail end to end
(run.py), and what every node saw of it (model.py: the records, roles and verdicts; report.py:
the tables). See command.py's docstring for what the demo shows and its invariants.
"""
