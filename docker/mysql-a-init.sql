-- mysql-a: orders shards 0 and 1 (run once by the mysql image's entrypoint,
-- on an empty data volume, from /docker-entrypoint-initdb.d).
-- Same databases as the local stack's MariaDB on 53306 (scripts/stack.sh):
-- orders_4 is a spare fifth shard for rebalancing, orders_ref a reference
-- database for differential tests.
CREATE DATABASE IF NOT EXISTS orders_0 CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_ai_ci;
CREATE DATABASE IF NOT EXISTS orders_1 CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_ai_ci;
CREATE DATABASE IF NOT EXISTS orders_4 CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_ai_ci;
CREATE DATABASE IF NOT EXISTS orders_ref CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_ai_ci;
