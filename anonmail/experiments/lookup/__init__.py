"""The S/Kademlia lookup experiment (`anonmail sim lookup`): model, run, report, command."""
