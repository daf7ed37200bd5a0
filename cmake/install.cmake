# Installation for programs that embed the library: `cmake --install build
# --prefix DIR` puts libfpdm.a, fpdm.h, the two programs, the shipped models
# (share/fpdm/models, where an installed fpdm-sample finds its default one)
# and lib/pkgconfig/fpdm.pc there, so that
#   cc prog.c $(pkg-config --cflags --libs fpdm)
# builds against it (fpdm.pc finds the prefix from its own place, so the
# folder may move). libfpdm.a is static: fpdm.pc lists what it needs
# (OpenBLAS, OpenMP, and for a CUDA build the CUDA runtime, cuBLAS(Lt),
# cuDNN and the C++ runtime the .cu files use), with run paths for the
# libraries outside the system folders (the OpenMP OpenBLAS, CUDA's).
include(GNUInstallDirs)
install(TARGETS fpdm ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES ${PROJECT_SOURCE_DIR}/host/fpdm.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
# The programs keep their run path to the OpenMP OpenBLAS when installed (the
# build's, set at link time: CMake's rewrite at install fails on it).
foreach(tool fpdm-sample fpdm-bench)
  if(TARGET ${tool})
    set_target_properties(${tool} PROPERTIES BUILD_WITH_INSTALL_RPATH ON
                          INSTALL_RPATH_USE_LINK_PATH ON)
    install(TARGETS ${tool} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
endforeach()
# The sampling models (not the evaluation's digit classifier), where an
# installed fpdm-sample looks for its default one: the data folder's fpdm/,
# as a path from the program's folder, so the prefix may move.
install(FILES ${PROJECT_SOURCE_DIR}/models/fpdm-mnist.safetensors
              ${PROJECT_SOURCE_DIR}/models/dit-mnist.safetensors
              ${PROJECT_SOURCE_DIR}/models/README.md
        DESTINATION ${CMAKE_INSTALL_DATADIR}/fpdm/models)
if(TARGET fpdm-sample)
  file(RELATIVE_PATH FPDM_DATA_FROM_BIN "${CMAKE_INSTALL_FULL_BINDIR}"
       "${CMAKE_INSTALL_FULL_DATADIR}/fpdm")
  target_compile_definitions(fpdm-sample PRIVATE FPDM_DATA_FROM_BIN="${FPDM_DATA_FROM_BIN}")
endif()

# A library by its path, with a run path where the loader would not look.
function(fpdm_pc_library library)
  get_filename_component(library_dir ${library} DIRECTORY)
  set(entry " ${library}")
  if(NOT library_dir IN_LIST CMAKE_C_IMPLICIT_LINK_DIRECTORIES)
    string(APPEND entry " -Wl,-rpath,${library_dir}")
  endif()
  set(FPDM_PC_LIBS "${FPDM_PC_LIBS}${entry}" PARENT_SCOPE)
endfunction()

set(FPDM_PC_LIBS "")
foreach(library ${BLAS_LIBRARIES})
  fpdm_pc_library(${library})
endforeach()
string(APPEND FPDM_PC_LIBS " ${OpenMP_C_FLAGS}")
if(FPDM_HAVE_CUDA)
  string(APPEND FPDM_PC_LIBS " -L${CUDAToolkit_LIBRARY_DIR} -Wl,-rpath,${CUDAToolkit_LIBRARY_DIR}"
         " -lcudart -lcublasLt -lcublas")
  if(CUDNN_LIBRARY)
    fpdm_pc_library(${CUDNN_LIBRARY})
  endif()
  string(APPEND FPDM_PC_LIBS " -lstdc++")
endif()
string(APPEND FPDM_PC_LIBS " -lm")
# From the pkgconfig folder up to the prefix: ../.. under lib/, ../../.. under
# lib/x86_64-linux-gnu/ (Debian's libdir when the prefix is /usr).
file(RELATIVE_PATH FPDM_PC_TO_PREFIX "/prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/prefix")
string(REGEX REPLACE "/$" "" FPDM_PC_TO_PREFIX "${FPDM_PC_TO_PREFIX}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/fpdm.pc.in ${PROJECT_BINARY_DIR}/fpdm.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/fpdm.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
