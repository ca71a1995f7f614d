"""optiserve's HTTP server: LitServe inference workers, management routes, model store, background jobs."""
