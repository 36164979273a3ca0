"""Money through Stripe: top-ups, invoice and payout delivery, and Stripe's webhooks."""
