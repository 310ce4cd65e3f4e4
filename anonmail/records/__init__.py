"""Records: ids, network parameters and the signed records every layer above exchanges."""
