-- Undoes 006: the billing records go (AF_BILLING still holds its retention's worth).
DROP TABLE billing_records;
