#!/usr/bin/env node
import { main } from "../src/server.js";

main(process.argv.slice(2), process.env).catch((err) => {
  process.stderr.write(`calmesh-mcp-server: ${err && err.message ? err.message : err}\n`);
  process.exit(1);
});
