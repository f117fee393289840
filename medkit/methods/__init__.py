"""One module per method, each reading like its paper's Method section."""
