"""Model families (one file each) and their weight loaders."""
