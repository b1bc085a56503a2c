"""Chat turns: relaying an agent's answer to one client, with its end-of-stream contract."""
