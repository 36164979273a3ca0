"""Period close: invoices, statements, payouts, licensor usage reports and SLA credits."""
