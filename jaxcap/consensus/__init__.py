"""Consensus reranking (Devlin et al. 2015, "Exploring nearest neighbor approaches for image captioning"; Mao et
al. 2015): beam search's captions of a photo re-ranked by how well they agree with what people wrote about the
training photos that look most like it.

    python -m jaxcap.consensus --checkpoint workdirs/flickr8k_lite0 [--data_dir DIR] [--k 15 --weight 4]

writes <workdir>/consensus.npz (`build.write`). A `Captioner` loaded from that workdir (the first member of an
ensemble) finds it, and every beam search it runs (the evaluator, `jaxcap.caption`, the batching service and
the app) ranks the beams with it (`index.Reranker`). Greedy decoding has nothing to rerank. The index records
its train images' file names: `jaxcap.evaluate` refuses to rerank a split that shares any (`index.check_disjoint`).

- `index`: the index and the reranking, numpy only (what this package exports);
- `build`: an index from a checkpoint and its dataset's train split;
- `__main__`: the command line.
"""
from jaxcap.consensus.index import (FILENAME, ConsensusError, Index, Reranker, check_disjoint, load_checked, pool,
                                    rerank)

__all__ = ["FILENAME", "ConsensusError", "Index", "Reranker", "check_disjoint", "load_checked", "pool", "rerank"]
