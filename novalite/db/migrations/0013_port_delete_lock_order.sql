-- 0013: a port delete takes its project's port counter before its subnet (issue #22). Idempotent.
-- Triggers of one event fire in the order of their names. A port create holds its project's
-- network_usage row from its quota check on, and its insert then counts the port into its subnet
-- (ports_pool_used_insert, 0011). A delete counted the subnet first (ports_pool_used_delete sorts
-- before ports_usage_delete) and the project's row second: a delete and a create on one network
-- each held the row the other waited for (a deadlock, seen while servers booted and were deleted
-- on one tenant network). Renamed so it sorts after ports_usage_delete, every writer of ports
-- takes the project's row, then the subnet.
DROP TRIGGER IF EXISTS ports_pool_used_delete ON ports;
CREATE OR REPLACE TRIGGER ports_usage_delete_then_pool_used AFTER DELETE ON ports
    REFERENCING OLD TABLE AS old_ports FOR EACH STATEMENT EXECUTE FUNCTION novalite_pool_used_statement();
