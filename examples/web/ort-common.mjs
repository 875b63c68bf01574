// transformers.js's web build imports `Tensor` from onnxruntime-common; the import map points
// that name here, to the copy inside onnxruntime-web's bundle, so that the tensors it makes are
// the class onnxruntime-web checks for (one copy of onnxruntime-common on the page).
export * from 'onnxruntime-web/webgpu';
