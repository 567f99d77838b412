// What the page may say about a camera frame (server/static/why.js): never an ImageNet label on a
// person. Run by Node.js (tests/test_web_reducer.py).

import test from "node:test";
import assert from "node:assert/strict";

import { readVision, objectLabels } from "../../server/static/why.js";

const labels = [{ name: "espresso", score: 0.81 }, { name: "cup", score: 0.1 }];

test("labels of a frame without a face are shown", () => {
  const v = readVision({ source: "frame", face_count: 0, labels });
  assert.equal(v.faces, 0);
  assert.deepEqual(objectLabels(v).map((l) => l.label), ["espresso", "cup"]);
});

test("with a face in view no label is shown (ImageNet has no class for a person)", () => {
  const v = readVision({ source: "frame", face_count: 1, labels: [{ name: "bobsled", score: 0.4 }] });
  assert.equal(v.faces, 1);
  assert.deepEqual(objectLabels(v), []);
});

test("a turn without camera frames says nothing about faces", () => {
  const v = readVision({ source: "turn", face_count: 0, frames: [], labels: [] });
  assert.equal(v.faces, null);
});
