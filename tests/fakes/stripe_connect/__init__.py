"""A stand-in for Stripe's HTTP API in tests: localstripe behind a Connect/invoicing shim."""
