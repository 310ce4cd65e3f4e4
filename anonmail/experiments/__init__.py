"""Experiments, benchmarks and the demo (DESIGN.md §1 "experiments", §9), above the simulator.

Each experiment is a package split into `model` (configuration, result records, pure formulas),
`run` (building the network and running it), `report` (formatting tables) and `command` (its
`anonmail ...` front-end, `register(subparsers)`): `lookup/` (S/Kademlia's disjoint-path lookups
under colluders, `anonmail sim lookup`), `mail/` (delivery under droppers and churn, directly
or through hostile go-betweens, `anonmail sim mail`), `anonymity/` (the linkage model of
anonymous sending, `anonmail sim anonymity`), `bench/` (`anonmail bench rpc|mail|anon`, over
real TCP and the simulated network), and `demo/` (`anonmail demo`). `sim_command.py`
assembles the `anonmail sim` group.

Invariant: these modules may import every layer below (the simulator in `anonmail.sim`
included); nothing below imports them. Only the command modules and the benchmarks over real
TCP read the wall clock or the OS RNG.
"""
