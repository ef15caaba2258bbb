"""Deep Compression (Han et al. 2016): pruning, trained weight sharing, Huffman coding, and the
``.tdc`` file format with its loader.

    deep_compress(model, data, path, sparsity=0.9, ...) -> DeepResult   (stages: size, accuracy)
    compress(onnx_model, path) -> CompressReport      load(path) -> onnx.ModelProto      decompress(path, out)
    share_weights(model, bits={"conv": 5, "fc": 4}) / unshare(model)      kmeans_1d(values, k)
"""
from tuili.compress.deep.fileformat import MAGIC, VERSION, CompressReport, compress, decompress, load
from tuili.compress.deep.pipeline import DeepResult, deep_compress, fold_batchnorm
from tuili.compress.deep.sharing import DEFAULT_BITS, kmeans_1d, share_weights, unshare

__all__ = ["DEFAULT_BITS", "MAGIC", "VERSION", "CompressReport", "DeepResult", "compress", "decompress",
           "deep_compress", "fold_batchnorm", "kmeans_1d", "load", "share_weights", "unshare"]
