# Every tests/test_*.c is one test program, run from the source tree so it
# finds tests/golden. A test exits 77 to report SKIPPED.
file(GLOB FPDM_C_TESTS CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/test_*.c)
list(REMOVE_ITEM FPDM_C_TESTS ${PROJECT_SOURCE_DIR}/tests/test_util.c)
foreach(test_source ${FPDM_C_TESTS})
  get_filename_component(test_name ${test_source} NAME_WE)
  add_executable(${test_name} ${test_source} ${PROJECT_SOURCE_DIR}/tests/test_util.c)
  target_include_directories(${test_name} PRIVATE ${PROJECT_SOURCE_DIR}/host
                             ${PROJECT_SOURCE_DIR}/tests ${STB_INCLUDE_DIR})
  target_link_libraries(${test_name} PRIVATE fpdm_tool_support OpenMP::OpenMP_C)
  add_test(NAME ${test_name} COMMAND ${test_name} WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(${test_name} PROPERTIES SKIP_RETURN_CODE 77 LABELS cpu)
endforeach()
# test_vae reads metadata decimals under a locale whose decimal point is ','
# (as in a program that called setlocale(LC_ALL, "") in Germany): one is
# built into the build folder where this machine has localedef and Debian's
# locale sources (the locales package); without them that check says so and
# reads in the C locale only.
find_program(FPDM_LOCALEDEF localedef)
set(FPDM_COMMA_LOCALE ${CMAKE_BINARY_DIR}/locales/de_DE.UTF-8)
if(FPDM_LOCALEDEF AND EXISTS /usr/share/i18n/locales/de_DE AND NOT EXISTS ${FPDM_COMMA_LOCALE})
  file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/locales)
  execute_process(COMMAND ${FPDM_LOCALEDEF} -i de_DE -f UTF-8 ${FPDM_COMMA_LOCALE}
                  OUTPUT_QUIET ERROR_QUIET)
endif()
if(EXISTS ${FPDM_COMMA_LOCALE})
  set_tests_properties(test_vae PROPERTIES ENVIRONMENT LOCPATH=${CMAKE_BINARY_DIR}/locales)
endif()
# host/vector_math.h's functions in the portable variant too (test_vector_math
# runs the one this CPU picks): the test and host/vector_math.c's reductions
# built with VM_NO_CLONES (their symbols then come from here, not libfpdm).
add_executable(test_vector_math_baseline ${PROJECT_SOURCE_DIR}/tests/test_vector_math.c
               ${PROJECT_SOURCE_DIR}/host/vector_math.c ${PROJECT_SOURCE_DIR}/tests/test_util.c)
target_compile_definitions(test_vector_math_baseline PRIVATE VM_NO_CLONES)
target_include_directories(test_vector_math_baseline PRIVATE ${PROJECT_SOURCE_DIR}/host
                           ${PROJECT_SOURCE_DIR}/tests)
target_link_libraries(test_vector_math_baseline PRIVATE fpdm_tool_support)
add_test(NAME test_vector_math_baseline COMMAND test_vector_math_baseline)
set_tests_properties(test_vector_math_baseline PROPERTIES LABELS cpu)

# Python tests need torch (Debian's python3-torch); they skip without it.
find_program(FPDM_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
file(GLOB FPDM_PY_TESTS CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/test_*.py)
foreach(test_source ${FPDM_PY_TESTS})
  get_filename_component(test_name ${test_source} NAME_WE)
  add_test(NAME ${test_name} COMMAND ${FPDM_PYTHON} ${test_source} $<TARGET_FILE_DIR:fpdm>
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(${test_name} PROPERTIES SKIP_RETURN_CODE 77 LABELS python)
endforeach()

# Command-line tests: tests/cli/*.sh get the build folder as their argument.
file(GLOB FPDM_CLI_TESTS CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/cli/test_*.sh)
foreach(test_source ${FPDM_CLI_TESTS})
  get_filename_component(test_name ${test_source} NAME_WE)
  add_test(NAME cli_${test_name} COMMAND bash ${test_source} ${PROJECT_BINARY_DIR}
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(cli_${test_name} PROPERTIES SKIP_RETURN_CODE 77 LABELS cli)
endforeach()

# GPU tests (tests/gpu/test_*.c): only with the CUDA backend; they exit 77
# (SKIPPED) when no GPU is visible.
if(FPDM_HAVE_CUDA)
  file(GLOB FPDM_GPU_TESTS CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/gpu/test_*.c)
  foreach(test_source ${FPDM_GPU_TESTS})
    get_filename_component(test_name ${test_source} NAME_WE)
    add_executable(gpu_${test_name} ${test_source} ${PROJECT_SOURCE_DIR}/tests/test_util.c)
    target_include_directories(gpu_${test_name} PRIVATE ${PROJECT_SOURCE_DIR}/host
                               ${PROJECT_SOURCE_DIR}/kernels ${PROJECT_SOURCE_DIR}/tests)
    target_link_libraries(gpu_${test_name} PRIVATE fpdm_tool_support OpenMP::OpenMP_C)
    add_test(NAME gpu_${test_name} COMMAND gpu_${test_name} WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
    set_tests_properties(gpu_${test_name} PROPERTIES SKIP_RETURN_CODE 77 LABELS gpu)
  endforeach()
  # Benchmarks (tests/gpu/bench_*.c), not tests: tests/gpu/run.sh runs them.
  file(GLOB FPDM_GPU_BENCHES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/gpu/bench_*.c)
  foreach(bench_source ${FPDM_GPU_BENCHES})
    get_filename_component(bench_name ${bench_source} NAME_WE)
    # bench_conv calls cuDNN itself: only where the build found it.
    if(bench_name STREQUAL "bench_conv" AND NOT (CUDNN_INCLUDE_DIR AND CUDNN_LIBRARY))
      continue()
    endif()
    add_executable(${bench_name} ${bench_source} ${PROJECT_SOURCE_DIR}/tests/test_util.c)
    target_include_directories(${bench_name} PRIVATE ${PROJECT_SOURCE_DIR}/host
                               ${PROJECT_SOURCE_DIR}/kernels ${PROJECT_SOURCE_DIR}/tests)
    target_link_libraries(${bench_name} PRIVATE fpdm_tool_support OpenMP::OpenMP_C)
    if(bench_name STREQUAL "bench_conv")
      target_include_directories(${bench_name} PRIVATE ${CUDNN_INCLUDE_DIR})
    endif()
  endforeach()
endif()
# test_out_of_memory fails the library's allocations one by one through
# wrappers the linker puts in place of malloc and its kin (and mmap).
target_link_options(test_out_of_memory PRIVATE
                    -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=aligned_alloc,--wrap=mmap)
