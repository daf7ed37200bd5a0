# The CUDA backend: kernels/*.cu compiled into the fpdm library, for the
# architectures below plus PTX, linked against cuBLAS/cuBLASLt.
# Set before enable_language: otherwise CMake picks the compiler's default,
# which for CUDA 13 with CMake 3.25 comes out empty.
if(NOT CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 80-real 86-real 89-real 90-real 90-virtual)
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
file(GLOB FPDM_CUDA_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/kernels/*.cu)
if(FPDM_CUDA_SOURCES)
  target_sources(fpdm PRIVATE ${FPDM_CUDA_SOURCES})
  target_compile_definitions(fpdm PRIVATE FPDM_HAVE_CUDA=1)
  target_include_directories(fpdm PRIVATE ${PROJECT_SOURCE_DIR}/kernels)
  target_link_libraries(fpdm PUBLIC CUDA::cudart CUDA::cublas CUDA::cublasLt)
  # fpdm was created before CUDA was enabled, so it did not pick the list up.
  set_target_properties(fpdm PROPERTIES CUDA_SEPARABLE_COMPILATION OFF
                        CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}")
  # cuDNN serves the VAE decoder's convolutions (kernels/vae_ops_cuda.cu);
  # without it the decoder runs on CPU contexts only.
  find_path(CUDNN_INCLUDE_DIR cudnn.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
  find_library(CUDNN_LIBRARY cudnn HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/lib/x86_64-linux-gnu)
  if(CUDNN_INCLUDE_DIR AND CUDNN_LIBRARY)
    target_compile_definitions(fpdm PRIVATE FPDM_HAVE_CUDNN=1)
    target_include_directories(fpdm PRIVATE ${CUDNN_INCLUDE_DIR})
    target_link_libraries(fpdm PUBLIC ${CUDNN_LIBRARY})
    message(STATUS "fpdm: cuDNN ${CUDNN_LIBRARY}")
  else()
    message(STATUS "fpdm: cuDNN not found: the VAE decoder runs on CPU contexts only")
  endif()
  # Which variant of the tensor-core attention kernel the backend runs for
  # head widths 49 to 80 (kernels/attention.cu): 2, the fastest on an H100;
  # tests/gpu/run.sh times them all on the GPU at hand and rebuilds with
  # another where it is faster there.
  set(FPDM_ATTENTION_VARIANT 2 CACHE STRING "The tensor-core attention variant the CUDA backend runs")
  if(NOT FPDM_ATTENTION_VARIANT MATCHES "^[0-9]$")
    message(FATAL_ERROR "FPDM_ATTENTION_VARIANT must be a variant number, not '${FPDM_ATTENTION_VARIANT}'")
  endif()
  set_property(SOURCE ${PROJECT_SOURCE_DIR}/kernels/attention.cu APPEND PROPERTY
               COMPILE_DEFINITIONS FPDM_ATTENTION_VARIANT=${FPDM_ATTENTION_VARIANT})
  # Which variant of the cached LayerNorm kernel the backend runs
  # (kernels/layernorm.cu; tests/gpu/bench_layernorm.c times them).
  set(FPDM_LAYERNORM_VARIANT 1 CACHE STRING "The cached LayerNorm kernel variant the CUDA backend runs")
  if(NOT FPDM_LAYERNORM_VARIANT MATCHES "^[01]$")
    message(FATAL_ERROR "FPDM_LAYERNORM_VARIANT must be 0 or 1, not '${FPDM_LAYERNORM_VARIANT}'")
  endif()
  set_property(SOURCE ${PROJECT_SOURCE_DIR}/kernels/layernorm.cu APPEND PROPERTY
               COMPILE_DEFINITIONS FPDM_LAYERNORM_VARIANT=${FPDM_LAYERNORM_VARIANT})
  target_compile_options(fpdm PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  if(FPDM_WERROR)
    target_compile_options(fpdm PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>
                           $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Werror>)
  endif()
endif()
