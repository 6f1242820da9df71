"""Vector and blob stores behind small protocols; one contract suite covers every backend."""
