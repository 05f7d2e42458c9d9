-- Undoes 007: isolation policies, tokens and tenants go; af_app loses its grants
-- here. The role itself stays when another database still grants it anything
-- (roles are per server).
DROP POLICY tenant_isolation ON billing_records;
ALTER TABLE billing_records NO FORCE ROW LEVEL SECURITY;
ALTER TABLE billing_records DISABLE ROW LEVEL SECURITY;
DROP POLICY tenant_isolation ON runs;
ALTER TABLE runs NO FORCE ROW LEVEL SECURITY;
ALTER TABLE runs DISABLE ROW LEVEL SECURITY;
DROP POLICY tenant_isolation ON executions;
ALTER TABLE executions NO FORCE ROW LEVEL SECURITY;
ALTER TABLE executions DISABLE ROW LEVEL SECURITY;
DROP FUNCTION af_authenticate(bytea);
DROP TABLE api_tokens;
DROP TABLE tenants;
DROP FUNCTION af_visible(text);
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE USAGE, SELECT ON SEQUENCES FROM af_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM af_app;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM af_app;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM af_app;
REVOKE USAGE ON SCHEMA public FROM af_app;
DO $$
BEGIN
    DROP ROLE af_app;
EXCEPTION WHEN dependent_objects_still_exist THEN
    RAISE NOTICE 'af_app keeps existing: another database grants it privileges';
END
$$;
