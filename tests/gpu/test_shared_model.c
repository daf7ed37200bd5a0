/* tests/gpu/test_shared_model.c - tests/test_shared_model.c with its contexts
 * on the GPU: one model and one VAE in device memory, shared by four threads'
 * CUDA contexts (each its own stream, handles and recorded graphs), equal bit
 * for bit to the same requests run alone. Exits 77 (SKIPPED) without a GPU.
 *
 *   ./build/gpu_test_shared_model
 */
#include "backend_cuda.h"

#define SHARED_MODEL_DEVICE "cuda"
#define SHARED_MODEL_NEEDS_GPU
#include "../test_shared_model.c"
