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
  # Kernels that come in variants (llm.c-style, each checked by a GPU test and
  # timed by a bench in tests/gpu/): the backend runs the variant the
  # kernel's source names (its #define), or the one this cache option names.
  # The option is empty by default, so that a build folder made before the
  # source's default changed follows it rather than keeping the old number.
  function(fpdm_kernel_variant option source description)
    set(${option} "" CACHE STRING "${description} (empty: the default in ${source})")
    if("${${option}}" STREQUAL "")
      return()
    endif()
    if(NOT ${option} MATCHES "^[0-9]$")
      message(FATAL_ERROR "${option} must be empty or a variant number, not '${${option}}'")
    endif()
    set_property(SOURCE ${PROJECT_SOURCE_DIR}/${source} APPEND PROPERTY
                 COMPILE_DEFINITIONS ${option}=${${option}})
  endfunction()
  # The tensor-core attention for head widths 49 to 80 (2 by default, the
  # fastest on an H100); tests/gpu/run.sh times them all on the GPU at hand
  # and rebuilds with another where it is faster there.
  fpdm_kernel_variant(FPDM_ATTENTION_VARIANT kernels/attention.cu
                      "The tensor-core attention variant the CUDA backend runs")
  # The cached LayerNorm (1 by default; tests/gpu/bench_layernorm.c times both).
  fpdm_kernel_variant(FPDM_LAYERNORM_VARIANT kernels/layernorm.cu
                      "The cached LayerNorm kernel variant the CUDA backend runs")
  target_compile_options(fpdm PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  if(FPDM_WERROR)
    target_compile_options(fpdm PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>
                           $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Werror>)
  endif()
endif()
