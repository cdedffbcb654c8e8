-- mysql-b: orders shards 2 and 3 (run once by the mysql image's entrypoint,
-- on an empty data volume, from /docker-entrypoint-initdb.d).
-- The local stack (scripts/stack.sh) has the same shards on MariaDB 53307.
CREATE DATABASE IF NOT EXISTS orders_2 CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_ai_ci;
CREATE DATABASE IF NOT EXISTS orders_3 CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_ai_ci;
