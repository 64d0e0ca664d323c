// @calmesh/mcp-server: the CalMesh MCP server for `npx`.
//
//   CALMESH_API_KEY=cm_live_... npx @calmesh/mcp-server                      # stdio (default)
//   CALMESH_API_KEY=cm_live_... CALMESH_HTTP_SECRET=... \
//     npx @calmesh/mcp-server --transport http --port 3100                   # streamable HTTP at /mcp
//
// The tools are not written here. Their names, descriptions (with the key's scope), input schemas
// and annotations come from the API (`GET /api/v1/tools?format=mcp`, made from the one definition
// in CalMesh's calmesh_tools library, the same one the Python server `calmesh-mcp` reads), and each
// call is `POST /api/v1/tools/{name}/call`, which runs the tool with the user's key. `tools.json`,
// generated from the same definition (a test checks it matches), is only the list shown while the
// API cannot be reached.

import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { timingSafeEqual } from "node:crypto";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { CallToolRequestSchema, ListToolsRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const PACKAGE = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
export const DEFAULT_API_URL = "https://calmesh.xyz/api/v1";
const KEY_PATTERN = /^cm_live_[A-Za-z0-9_-]{20,}$/;
const INSTRUCTIONS =
  "CalMesh merges a person's Google, Microsoft, iCloud/CalDAV calendars and iCal feeds into unified calendars. " +
  "Start with calmesh_list_calendars to learn the calendar slugs and timezones. Times in answers are shown in the " +
  "calendar's timezone with UTC beside them; send instants in RFC 3339 with an offset.";

// What to do next when the tools endpoint itself refuses a call (the tool's own API problems come
// back from the API already worded as tool errors).
const NEXT_STEPS = {
  invalid_api_key: "The configured CALMESH_API_KEY is mistyped or truncated: set the whole key.",
  api_key_revoked: "The configured key was revoked: create a new key and update CALMESH_API_KEY.",
  api_key_expired: "The configured key has expired: create a new key and update CALMESH_API_KEY.",
  invalid_authorization: "Set CALMESH_API_KEY to a CalMesh API key (cm_live_…).",
  rate_limited: "Too many requests: wait for the Retry-After seconds, then try again.",
  daily_quota_exceeded: "The plan's daily API quota is used up: wait until tomorrow or upgrade the plan.",
  validation_error: "Fix the arguments named in the errors and call again.",
  tool_not_found: "List the tools again (tools/list) and use one of their names.",
  route_not_found: "CALMESH_API_URL must end in /api/v1 of a CalMesh server that serves /tools.",
  service_unavailable: "CalMesh is briefly unavailable: wait a few seconds and try again.",
  api_unreachable: "Check CALMESH_API_URL and the network, then try again.",
};

export class ConfigError extends Error {}

export function readConfig(env) {
  const key = (env.CALMESH_API_KEY || "").trim();
  if (!key) {
    throw new ConfigError(
      "CALMESH_API_KEY is not set. Create an API key in your CalMesh dashboard (or POST /api/v1/api-keys) " +
        "and set CALMESH_API_KEY=cm_live_… in the MCP server's environment.",
    );
  }
  if (!KEY_PATTERN.test(key)) {
    throw new ConfigError(
      "CALMESH_API_KEY does not look like a CalMesh API key: keys start with cm_live_ followed by at least " +
        "20 letters, digits, '-' or '_'. Copy the whole key shown when it was created.",
    );
  }
  const apiUrl = (env.CALMESH_API_URL || DEFAULT_API_URL).trim().replace(/\/+$/, "");
  if (!/^https?:\/\//.test(apiUrl)) throw new ConfigError(`CALMESH_API_URL must be an http(s) URL, got ${JSON.stringify(apiUrl)}`);
  return { apiKey: key, apiUrl };
}

export function parseArgs(argv) {
  const args = { transport: "stdio", port: 3100, host: "127.0.0.1" };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split("=", 2);
    const value = () => (inline !== undefined ? inline : argv[++i]);
    if (flag === "--transport") args.transport = value();
    else if (flag === "--port") args.port = Number(value());
    else if (flag === "--host") args.host = value();
    else if (flag === "--help" || flag === "-h") args.help = true;
    else if (flag === "--version") args.version = true;
    else throw new ConfigError(`unknown option ${argv[i]}; use --transport stdio|http, --port N, --host ADDR`);
  }
  if (!["stdio", "http"].includes(args.transport)) throw new ConfigError("--transport must be stdio or http");
  if (!Number.isInteger(args.port) || args.port < 1 || args.port > 65535) throw new ConfigError("--port must be 1..65535");
  return args;
}

/** One request of the CalMesh API with the user's key: {status, body, headers} or throws {unreachable}. */
async function api(config, method, path, body) {
  const headers = { Authorization: `Bearer ${config.apiKey}`, Accept: "application/json", "User-Agent": `calmesh-mcp-server/${PACKAGE.version}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(`${config.apiUrl}/${path}`, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(90_000),
    });
  } catch (err) {
    const reason = err && err.cause && err.cause.code ? err.cause.code : err && err.name ? err.name : "error";
    return { status: 0, body: { code: "api_unreachable", title: "CalMesh API unreachable",
      detail: `Could not reach ${config.apiUrl}: ${reason}. Check CALMESH_API_URL and your network.` }, headers: new Headers() };
  }
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { detail: text.slice(0, 500) }; }
  return { status: response.status, body: parsed, headers: response.headers };
}

function bundledTools() {
  return JSON.parse(readFileSync(new URL("../tools.json", import.meta.url), "utf8"));
}

/** The tools as the API describes them for this key (its scope in each description), else the bundled list. */
export async function loadTools(config) {
  const answer = await api(config, "GET", "tools?format=mcp");
  if (answer.status === 200 && answer.body && Array.isArray(answer.body.data) && answer.body.data.length) {
    return { tools: answer.body.data, source: "api" };
  }
  return { tools: bundledTools(), source: "bundled", problem: answer };
}

function problemAsToolError(status, problem, headers) {
  problem = problem && typeof problem === "object" ? problem : {};
  const code = problem.code || "error";
  const lines = [`CalMesh API error${status ? ` ${status}` : ""} (${code}): ${problem.detail || problem.title || "no detail"}`];
  for (const err of problem.errors || []) lines.push(`- ${err.field}: ${err.message}`);
  const next = NEXT_STEPS[code];
  if (next) lines.push(`Next: ${next}`);
  const retry = headers && headers.get && headers.get("retry-after");
  if (retry) lines.push(`Retry after ${retry} s.`);
  return { content: [{ type: "text", text: lines.join("\n") }], structuredContent: { error: problem }, isError: true };
}

/** Run a tool through `POST /tools/{name}/call`; every failure is a tool error saying what to do. */
export async function callTool(config, name, args) {
  const answer = await api(config, "POST", `tools/${encodeURIComponent(name)}/call`, { arguments: args || {} });
  if (answer.status === 200 && answer.body && Array.isArray(answer.body.content)) {
    const result = { content: answer.body.content, isError: Boolean(answer.body.is_error) };
    if (answer.body.structured && typeof answer.body.structured === "object") result.structuredContent = answer.body.structured;
    return result;
  }
  return problemAsToolError(answer.status, answer.body, answer.headers);
}

export function buildServer(config, tools) {
  const server = new Server(
    { name: "calmesh", title: "CalMesh", version: PACKAGE.version },
    { capabilities: { tools: {} }, instructions: INSTRUCTIONS },
  );
  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools }));
  server.setRequestHandler(CallToolRequestSchema, async (request) =>
    callTool(config, request.params.name, request.params.arguments));
  return server;
}

function sameSecret(given, expected) {
  const a = Buffer.from(given || "");
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

function sendJson(res, status, body, extra = {}) {
  const payload = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload), ...extra });
  res.end(payload);
}

async function readBody(req, limit = 4 * 1024 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error("body too large");
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** Streamable HTTP at /mcp, stateless (a fresh server per request), behind the Bearer secret. */
export function httpServer(config, tools, secret) {
  return createServer(async (req, res) => {
    const url = new URL(req.url || "/", "http://localhost");
    if (!sameSecret(req.headers.authorization, `Bearer ${secret}`)) {
      sendJson(res, 401, { error: "unauthorized", detail: "Send CALMESH_HTTP_SECRET as a Bearer token." },
        { "WWW-Authenticate": 'Bearer realm="calmesh-mcp"' });
      return;
    }
    if (url.pathname !== "/mcp") {
      sendJson(res, 404, { error: "not_found", detail: "The MCP endpoint is /mcp." });
      return;
    }
    if (req.method !== "POST") {
      sendJson(res, 405, { jsonrpc: "2.0", error: { code: -32000, message: "Method not allowed: POST JSON-RPC to /mcp." }, id: null },
        { Allow: "POST" });
      return;
    }
    let body;
    try {
      body = JSON.parse(await readBody(req));
    } catch {
      sendJson(res, 400, { jsonrpc: "2.0", error: { code: -32700, message: "Parse error: send a JSON-RPC message." }, id: null });
      return;
    }
    const server = buildServer(config, tools);
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
    res.on("close", () => { transport.close(); server.close(); });
    try {
      await server.connect(transport);
      await transport.handleRequest(req, res, body);
    } catch (err) {
      if (!res.headersSent) sendJson(res, 500, { jsonrpc: "2.0", error: { code: -32603, message: "Internal error" }, id: null });
    }
  });
}

const USAGE = `Usage: npx @calmesh/mcp-server [--transport stdio|http] [--port 3100] [--host 127.0.0.1]

Environment: CALMESH_API_KEY (required, cm_live_…), CALMESH_API_URL (default ${DEFAULT_API_URL}),
CALMESH_HTTP_SECRET (required with --transport http; clients send it as a Bearer token).
`;

export async function main(argv, env) {
  let args, config;
  try {
    args = parseArgs(argv);
    if (args.help) { process.stdout.write(USAGE); return; }
    if (args.version) { process.stdout.write(`${PACKAGE.version}\n`); return; }
    config = readConfig(env);
    if (args.transport === "http" && (env.CALMESH_HTTP_SECRET || "").length < 16) {
      throw new ConfigError("--transport http needs CALMESH_HTTP_SECRET (at least 16 characters); MCP clients send it as a Bearer token.");
    }
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`calmesh-mcp-server: ${err.message}\n`);
    process.exit(2);
  }
  const { tools, source, problem } = await loadTools(config);
  if (source !== "api") {
    const detail = problem && problem.body ? problem.body.detail || problem.body.title : "";
    process.stderr.write(`calmesh-mcp-server: could not read the tools from ${config.apiUrl} (${problem.status || "unreachable"}${detail ? `: ${detail}` : ""}); serving the bundled list.\n`);
  }
  if (args.transport === "stdio") {
    const server = buildServer(config, tools);
    await server.connect(new StdioServerTransport());
    return;
  }
  const http = httpServer(config, tools, env.CALMESH_HTTP_SECRET);
  await new Promise((resolve) => http.listen(args.port, args.host, resolve));
  process.stderr.write(`calmesh-mcp-server: streamable HTTP at http://${args.host}:${args.port}/mcp\n`);
}
