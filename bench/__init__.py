"""The benchmark: Tollgate beside direct calls and the peer gateways."""
