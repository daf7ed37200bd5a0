/* graph.cu - backend.h's graph ops on CUDA graphs: a recording is a stream
 * capture of the backend's stream, instantiated once and kept in a small
 * fixed table under its key; a replay is one cudaGraphLaunch. The table is
 * emptied whenever the backend releases device memory (a graph may point
 * into it) and at destroy.
 *
 * If a capture fails (some op cannot be captured), the error belongs to the
 * recording, not to the stream: nothing ran, so the backend's recorded
 * failure is cleared, graphs are switched off for this backend and the
 * caller runs the ops directly from then on. */
#include <string.h>

#include "cuda_backend.cuh"

static void graph_entry_release(cuda_graph_entry *entry) {
    if (entry->exec) cudaGraphExecDestroy(entry->exec);
    memset(entry, 0, sizeof(*entry));
}

void cuda_graphs_reset(cuda_backend *cb) {
    for (int i = 0; i < CUDA_GRAPHS; i++) graph_entry_release(&cb->graphs[i]);
    cb->next_graph_victim = 0;
}

static cuda_graph_entry *graph_find(cuda_backend *cb, const uintptr_t *key, int key_words) {
    if (key_words < 1 || key_words > CUDA_GRAPH_KEY_WORDS) return NULL;
    for (int i = 0; i < CUDA_GRAPHS; i++) {
        cuda_graph_entry *e = &cb->graphs[i];
        if (e->exec && e->key_words == key_words &&
            memcmp(e->key, key, (size_t)key_words * sizeof(uintptr_t)) == 0)
            return e;
    }
    return NULL;
}

int cuda_graph_launch(backend *be, const uintptr_t *key, int key_words) {
    cuda_backend *cb = cuda_of(be);
    /* After a failure every op is skipped; a replay is one more op. */
    if (!cuda_enter(cb)) return 1;
    cuda_graph_entry *entry = graph_find(cb, key, key_words);
    if (!entry) return 0;
    cuda_check(cb, cudaGraphLaunch(entry->exec, cb->stream), "cudaGraphLaunch");
    return 1;
}

int cuda_graph_begin(backend *be) {
    cuda_backend *cb = cuda_of(be);
    if (cb->graphs_disabled || cb->capturing || !cuda_enter(cb)) return -1;
    /* Thread-local: other threads' contexts may allocate meanwhile. */
    if (cudaStreamBeginCapture(cb->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        cudaGetLastError();
        cb->graphs_disabled = 1;
        return -1;
    }
    cb->capturing = 1;
    return 0;
}

/* Forgets a failed recording: nothing of it ran. */
static int recording_failed(cuda_backend *cb, cudaGraph_t graph) {
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    cb->failed = 0;
    cb->error[0] = '\0';
    cb->graphs_disabled = 1;
    return -1;
}

int cuda_graph_end(backend *be, const uintptr_t *key, int key_words) {
    cuda_backend *cb = cuda_of(be);
    if (!cb->capturing) return -1;
    cb->capturing = 0;
    cudaGraph_t graph = NULL;
    cudaError_t status = cudaStreamEndCapture(cb->stream, &graph);
    if (status != cudaSuccess || cb->failed || !graph || key_words < 1 ||
        key_words > CUDA_GRAPH_KEY_WORDS)
        return recording_failed(cb, graph);
    cudaGraphExec_t exec = NULL;
    if (cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) return recording_failed(cb, graph);
    cudaGraphDestroy(graph);

    cuda_graph_entry *entry = graph_find(cb, key, key_words);
    for (int i = 0; i < CUDA_GRAPHS && !entry; i++)
        if (!cb->graphs[i].exec) entry = &cb->graphs[i];
    if (!entry) {
        entry = &cb->graphs[cb->next_graph_victim];
        cb->next_graph_victim = (cb->next_graph_victim + 1) % CUDA_GRAPHS;
    }
    graph_entry_release(entry);
    entry->exec = exec;
    entry->key_words = key_words;
    memcpy(entry->key, key, (size_t)key_words * sizeof(uintptr_t));
    return 0;
}
