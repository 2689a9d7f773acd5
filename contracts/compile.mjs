// Regenerates artifacts/CommitRevealRounds.json with the pinned solc-js compiler.
//
//   node compile.mjs            write the artifact
//   node compile.mjs --out F    write it to F instead (the tests compare F with the
//                               committed artifact)
//
// The artifact records the compiler version and the exact settings, so anyone can
// rebuild the bytecode and compare it with what is deployed.
import { readFileSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = dirname(fileURLToPath(import.meta.url));
const CONTRACT = "CommitRevealRounds";
const SOURCE_FILE = `${CONTRACT}.sol`;
const EXPECTED_COMPILER = "0.8.37";
const settings = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 1000000 },
  viaIR: true,
  metadata: { bytecodeHash: "none" },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

const source = readFileSync(join(here, SOURCE_FILE), "utf8");
const version = solc.version();
if (!version.startsWith(EXPECTED_COMPILER + "+")) {
  console.error(`solc ${version} found; ${EXPECTED_COMPILER} is pinned (run npm ci in contracts/)`);
  process.exit(2);
}
const output = JSON.parse(
  solc.compile(JSON.stringify({ language: "Solidity", sources: { [SOURCE_FILE]: { content: source } }, settings })),
);
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
for (const e of output.errors ?? []) console.error(e.formattedMessage);
if (errors.length > 0) process.exit(1);

const compiled = output.contracts[SOURCE_FILE][CONTRACT];
const artifact = {
  contractName: CONTRACT,
  sourceFile: SOURCE_FILE,
  sourceSha256: createHash("sha256").update(source).digest("hex"),
  compiler: { name: "solc-js", version },
  settings: { evmVersion: settings.evmVersion, optimizer: settings.optimizer, viaIR: settings.viaIR, metadata: settings.metadata },
  abi: compiled.abi,
  bytecode: "0x" + compiled.evm.bytecode.object,
  deployedBytecode: "0x" + compiled.evm.deployedBytecode.object,
};
const outIndex = process.argv.indexOf("--out");
const target = outIndex > 0 ? process.argv[outIndex + 1] : join(here, "artifacts", `${CONTRACT}.json`);
writeFileSync(target, JSON.stringify(artifact, null, 2) + "\n");
console.log(`wrote ${target} (${(compiled.evm.deployedBytecode.object.length / 2) | 0} bytes deployed)`);
