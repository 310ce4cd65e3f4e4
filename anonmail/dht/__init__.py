"""The Kademlia substrate hardened after S/Kademlia: ids, routing table, RPCs, lookups."""
