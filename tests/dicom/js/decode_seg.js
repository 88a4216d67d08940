#!/usr/bin/env node
// Decode DICOM SEG files with dcmjs, as a web viewer does (OHIF's SEG loading builds on dcmjs).
//
// Usage: node decode_seg.js REQUEST.json RESULT.json
//   REQUEST: [{"path": "seg.dcm", "sources": null | [{"imageId", "SOPInstanceUID", "SOPClassUID",
//             "SeriesInstanceUID", "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient",
//             "PixelSpacing", "Rows", "Columns"}]}]
//   RESULT:  one object per SEG: what dcmjs read (segments, frames, per-frame source references and foreground
//            pixel counts from the unpacked bits) and, with sources, what dcmjs' Cornerstone adapter
//            (Segmentation.generateToolState, the labelmap a viewer paints) put on each source image; "error"
//            holds the message when dcmjs could not decode it. Exit status 1 if any SEG failed.
"use strict";

const fs = require("fs");
const dcmjs = require("dcmjs");

const { DicomMessage, DicomMetaDictionary, BitArray } = dcmjs.data;
const first = (value) => (Array.isArray(value) ? value[0] : value);
const list = (value) => (value === undefined ? [] : Array.isArray(value) ? value : [value]);

function readSeg(path) {
  const bytes = fs.readFileSync(path);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const message = DicomMessage.readFile(buffer);
  const dataset = DicomMetaDictionary.naturalizeDataset(message.dict);
  return { buffer, dataset };
}

function describe(dataset) {
  const rows = Number(dataset.Rows);
  const columns = Number(dataset.Columns);
  const frames = Number(dataset.NumberOfFrames);
  const bits = BitArray.unpack(first(dataset.PixelData));
  const sliceLength = rows * columns;
  if (bits.length < sliceLength * frames) {
    throw new Error(`pixel data holds ${bits.length} pixels, ${frames} frames of ${rows}x${columns} need ${sliceLength * frames}`);
  }
  const perFrame = list(dataset.PerFrameFunctionalGroupsSequence);
  const frameForeground = [];
  for (let f = 0; f < frames; f++) {
    let count = 0;
    for (let i = f * sliceLength; i < (f + 1) * sliceLength; i++) count += bits[i] ? 1 : 0;
    frameForeground.push(count);
  }
  const series = list(dataset.ReferencedSeriesSequence);
  const shared = first(dataset.SharedFunctionalGroupsSequence) || {};
  return {
    sopInstanceUID: dataset.SOPInstanceUID,
    sopClassUID: dataset.SOPClassUID,
    segmentationType: dataset.SegmentationType,
    rows,
    columns,
    frames,
    segments: list(dataset.SegmentSequence).map((s) => ({ number: s.SegmentNumber, label: s.SegmentLabel })),
    // per frame, else shared by all frames (as dcmjs' adapter looks it up)
    frameSegments: perFrame.map(
      (g) => first(g.SegmentIdentificationSequence || shared.SegmentIdentificationSequence).ReferencedSegmentNumber,
    ),
    frameSourceUIDs: perFrame.map(
      (g) => first(first(g.DerivationImageSequence).SourceImageSequence).ReferencedSOPInstanceUID,
    ),
    referencedSeriesUIDs: series.map((s) => s.SeriesInstanceUID),
    referencedInstanceUIDs: series.flatMap((s) => list(s.ReferencedInstanceSequence).map((i) => i.ReferencedSOPInstanceUID)),
    frameForeground,
  };
}

function metadataProvider(sources) {
  const byId = new Map(sources.map((s) => [s.imageId, s]));
  return {
    get(type, imageId) {
      const s = byId.get(imageId);
      if (s === undefined) return undefined;
      const iop = s.ImageOrientationPatient;
      switch (type) {
        case "imagePlaneModule":
          return {
            frameOfReferenceUID: s.FrameOfReferenceUID,
            rows: s.Rows,
            columns: s.Columns,
            imagePositionPatient: s.ImagePositionPatient,
            rowCosines: iop ? iop.slice(0, 3) : undefined,
            columnCosines: iop ? iop.slice(3, 6) : undefined,
            pixelSpacing: s.PixelSpacing,
          };
        case "generalSeriesModule":
          return { seriesInstanceUID: s.SeriesInstanceUID };
        case "imagePixelModule":
          return { rows: s.Rows, columns: s.Columns };
        case "sopCommonModule":
          return { sopInstanceUID: s.SOPInstanceUID, sopClassUID: s.SOPClassUID };
        case "instance":
          return s;
        default:
          return undefined;
      }
    },
  };
}

function paintOnSources(buffer, sources) {
  const imageIds = sources.map((s) => s.imageId);
  const state = dcmjs.adapters.Cornerstone.Segmentation.generateToolState(imageIds, buffer, metadataProvider(sources));
  if (!state) throw new Error("generateToolState returned nothing");
  const labelmaps = state.labelmapBufferArray;
  const imageForeground = {};
  const segmentsOnImage = {};
  sources.forEach((s, index) => {
    const sliceLength = s.Rows * s.Columns;
    let count = 0;
    for (const buf of labelmaps) {
      const view = new Uint16Array(buf, index * sliceLength * 2, sliceLength);
      for (let i = 0; i < sliceLength; i++) count += view[i] ? 1 : 0;
    }
    imageForeground[s.SOPInstanceUID] = count;
    segmentsOnImage[s.SOPInstanceUID] = list(state.segmentsOnFrame[index]);
  });
  return { labelmaps: labelmaps.length, imageForeground, segmentsOnImage };
}

function main() {
  const [requestPath, resultPath] = process.argv.slice(2);
  if (!requestPath || !resultPath) {
    process.stderr.write("usage: node decode_seg.js REQUEST.json RESULT.json\n");
    process.exit(2);
  }
  const request = JSON.parse(fs.readFileSync(requestPath, "utf8"));
  let failed = 0;
  const results = request.map((item) => {
    try {
      const { buffer, dataset } = readSeg(item.path);
      const result = { path: item.path, ...describe(dataset) };
      if (item.sources) result.viewer = paintOnSources(buffer, item.sources);
      return result;
    } catch (err) {
      failed += 1;
      return { path: item.path, error: String(err && err.stack ? err.stack : err) };
    }
  });
  fs.writeFileSync(resultPath, JSON.stringify(results));
  process.exit(failed ? 1 : 0);
}

main();
