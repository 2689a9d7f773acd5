// Regenerates the contract artifacts with the pinned solc-js compiler:
// artifacts/CommitRevealRounds.json (runs and rounds), artifacts/RoundsExtension.json (the
// code it runs through its fallback: registry, incentives, views), and artifacts/test/*.json
// for the contracts the tests use (an ERC-20 token, a reentrancy attacker).
//
//   node compile.mjs            write the artifacts
//   node compile.mjs --out D    write them under folder D instead (the tests compare D
//                               with the committed artifacts)
//
// The artifact records the compiler version and the exact settings, so anyone can
// rebuild the bytecode and compare it with what is deployed.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { dirname, join, posix } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = dirname(fileURLToPath(import.meta.url));
// [source file, contract, artifact path relative to the output folder]
const CONTRACTS = [
  ["CommitRevealRounds.sol", "CommitRevealRounds", "CommitRevealRounds.json"],
  ["RoundsExtension.sol", "RoundsExtension", "RoundsExtension.json"],
  ["test/TestToken.sol", "TestToken", "test/TestToken.json"],
  ["test/ReentrantWithdrawer.sol", "ReentrantWithdrawer", "test/ReentrantWithdrawer.json"],
];
const EXPECTED_COMPILER = "0.8.37";
// The runs setting trades code size for gas: 1,000,000 spent the least gas per participant
// per round of those bench/bench_gas.py measured (200, 1,000, 10,000, 1,000,000; see
// docs/protocol.md §2.9). The rounds contract must stay 4 KiB under EIP-170's 24,576
// bytes (tests/unit/chain/test_artifact.py): what no round needs goes to RoundsExtension.
const settings = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 1_000_000 },
  viaIR: true,
  metadata: { bytecodeHash: "none" },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

const version = solc.version();
if (!version.startsWith(EXPECTED_COMPILER + "+")) {
  console.error(`solc ${version} found; ${EXPECTED_COMPILER} is pinned (run npm ci in contracts/)`);
  process.exit(2);
}
// Imports resolve to this folder's sources (the contract's interface), then to the pinned
// packages in node_modules (OpenZeppelin Contracts).
function findImports(path) {
  for (const root of [here, join(here, "node_modules")]) {
    try {
      return { contents: readFileSync(join(root, path), "utf8") };
    } catch {
      // not under this root
    }
  }
  return { error: `not found: ${path}` };
}
const sources = Object.fromEntries(
  CONTRACTS.map(([file]) => [file, { content: readFileSync(join(here, file), "utf8") }]),
);
const output = JSON.parse(
  solc.compile(JSON.stringify({ language: "Solidity", sources, settings }), { import: findImports }),
);
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
// OpenZeppelin's own warnings (its pinned sources) are not ours to act on
for (const e of output.errors ?? []) {
  if (e.severity === "error" || !e.sourceLocation?.file.startsWith("@openzeppelin/")) console.error(e.formattedMessage);
}
if (errors.length > 0) process.exit(1);

const sha256 = (text) => createHash("sha256").update(text).digest("hex");
// A source of ours and those of ours it imports, transitively, each with its digest: what a
// rebuild of its artifact starts from (OpenZeppelin's sources are pinned by package-lock.json).
function ourSources(file, found = {}) {
  const text = readFileSync(join(here, file), "utf8");
  found[file] = sha256(text);
  for (const [, path] of text.matchAll(/^import\s[^"]*"(\.{1,2}\/[^"]+)";/gm)) {
    const imported = posix.normalize(posix.join(posix.dirname(file), path));
    if (!(imported in found)) ourSources(imported, found);
  }
  return found;
}
const outIndex = process.argv.indexOf("--out");
const folder = outIndex > 0 ? process.argv[outIndex + 1] : join(here, "artifacts");
for (const [file, name, path] of CONTRACTS) {
  const compiled = output.contracts[file][name];
  const artifact = {
    contractName: name,
    sourceFile: file,
    sourceSha256: sha256(sources[file].content),
    sourceFiles: ourSources(file),
    compiler: { name: "solc-js", version },
    settings: { evmVersion: settings.evmVersion, optimizer: settings.optimizer, viaIR: settings.viaIR, metadata: settings.metadata },
    abi: compiled.abi,
    bytecode: "0x" + compiled.evm.bytecode.object,
    deployedBytecode: "0x" + compiled.evm.deployedBytecode.object,
  };
  const target = join(folder, path);
  mkdirSync(dirname(target), { recursive: true });
  writeFileSync(target, JSON.stringify(artifact, null, 2) + "\n");
  console.log(`wrote ${target} (${(compiled.evm.deployedBytecode.object.length / 2) | 0} bytes deployed)`);
}
