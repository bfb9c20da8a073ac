"""URIs to filesystems, and versioned snapshots with manifest, _SUCCESS and a LATEST pointer."""
