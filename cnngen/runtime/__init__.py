"""Running compiled networks: plans per batch size and CompiledNet."""
