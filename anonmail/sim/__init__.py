"""The simulator (DESIGN.md §9): the network model (network.py), scenarios (scenario.py), storage
nodes with churn (storage.py), adversaries (adversary.py, storage_adversary.py), metrics
(metrics.py) and seeding (determinism.py). Experiments built on it live in anonmail.experiments,
above this layer: nothing here imports them."""
