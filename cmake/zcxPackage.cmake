# libzcx as users get it: a shared library with a SONAME that exports only the public API
# (everything is compiled with -fvisibility=hidden; ZCX_EXPORT in zcx/export.h marks the API),
# an optional static variant, and the install rules: headers, zcxConfig.cmake with zcx::zcx,
# zcxConfigVersion.cmake and zcx.pc. The project's own tests keep linking the internal static
# libraries (target `zcx`), since they reach into zcx::detail.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(ZCX_OBJECTS)
foreach(lib ${ZCX_INTERNAL_LIBS})
  list(APPEND ZCX_OBJECTS $<TARGET_OBJECTS:${lib}>)
endforeach()
# What the objects need at link time; private to libzcx.so (no public header includes them).
set(ZCX_LINK_DEPS glog::glog ucx::ucp ucx::ucs Threads::Threads OpenSSL::Crypto)
if(ZCX_WITH_VERBS)
  list(APPEND ZCX_LINK_DEPS PkgConfig::IBVERBS PkgConfig::RDMACM)
endif()
# 0.x: every minor version may change the ABI, so the SONAME carries it (libzcx.so.0.1).
if(PROJECT_VERSION_MAJOR EQUAL 0)
  set(ZCX_SOVERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR})
  set(ZCX_COMPATIBILITY SameMinorVersion)
else()
  set(ZCX_SOVERSION ${PROJECT_VERSION_MAJOR})
  set(ZCX_COMPATIBILITY SameMajorVersion)
endif()

add_library(zcx_shared SHARED ${ZCX_OBJECTS})
add_library(zcx::zcx ALIAS zcx_shared)
set_target_properties(zcx_shared PROPERTIES
  OUTPUT_NAME zcx EXPORT_NAME zcx LINKER_LANGUAGE CXX
  VERSION ${PROJECT_VERSION} SOVERSION ${ZCX_SOVERSION})
target_link_libraries(zcx_shared PRIVATE ${ZCX_LINK_DEPS})
# Every symbol the objects use must be resolved by the libraries above; libzcx.map keeps the
# std:: template instances out of the exported symbols.
target_link_options(zcx_shared PRIVATE -Wl,--no-undefined
  -Wl,--version-script=${PROJECT_SOURCE_DIR}/cmake/libzcx.map)
set_property(TARGET zcx_shared APPEND PROPERTY LINK_DEPENDS ${PROJECT_SOURCE_DIR}/cmake/libzcx.map)
set(ZCX_PUBLIC_INCLUDES
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/core/include>
  $<BUILD_INTERFACE:${PROJECT_BINARY_DIR}/core/include>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_include_directories(zcx_shared INTERFACE ${ZCX_PUBLIC_INCLUDES})
target_compile_features(zcx_shared INTERFACE cxx_std_20)
set(ZCX_PACKAGE_TARGETS zcx_shared)

if(ZCX_BUILD_STATIC)
  add_library(zcx_static STATIC ${ZCX_OBJECTS})
  add_library(zcx::zcx_static ALIAS zcx_static)
  set_target_properties(zcx_static PROPERTIES
    OUTPUT_NAME zcx EXPORT_NAME zcx_static LINKER_LANGUAGE CXX)
  # Static: the dependencies travel with it (zcxConfig.cmake finds them for the user).
  target_link_libraries(zcx_static PRIVATE ${ZCX_LINK_DEPS})
  target_include_directories(zcx_static INTERFACE ${ZCX_PUBLIC_INCLUDES})
  target_compile_features(zcx_static INTERFACE cxx_std_20)
endif()

if(NOT ZCX_INSTALL)
  return()
endif()

set(ZCX_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/zcx)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/core/include/zcx
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT dev FILES_MATCHING PATTERN "*.h")
install(FILES ${PROJECT_BINARY_DIR}/core/include/zcx/version.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/zcx COMPONENT dev)
install(TARGETS zcx_shared EXPORT zcxTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT runtime NAMELINK_COMPONENT dev)
install(EXPORT zcxTargets NAMESPACE zcx:: DESTINATION ${ZCX_CMAKE_DIR} COMPONENT dev)
if(ZCX_BUILD_STATIC)
  install(TARGETS zcx_static EXPORT zcxStaticTargets
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
  install(EXPORT zcxStaticTargets NAMESPACE zcx:: DESTINATION ${ZCX_CMAKE_DIR} COMPONENT dev)
endif()

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/zcxConfig.cmake.in
  ${PROJECT_BINARY_DIR}/zcxConfig.cmake INSTALL_DESTINATION ${ZCX_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/zcxConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY ${ZCX_COMPATIBILITY})
install(FILES ${PROJECT_BINARY_DIR}/zcxConfig.cmake ${PROJECT_BINARY_DIR}/zcxConfigVersion.cmake
        DESTINATION ${ZCX_CMAKE_DIR} COMPONENT dev)

# zcx.pc: relocatable (paths relative to the .pc file, so `cmake --install --prefix` works).
set(ZCX_PC_DIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
file(RELATIVE_PATH ZCX_PC_TO_PREFIX /${ZCX_PC_DIR} /)
string(REGEX REPLACE "/$" "" ZCX_PC_TO_PREFIX "${ZCX_PC_TO_PREFIX}")
set(ZCX_PC_REQUIRES_PRIVATE "libglog ucx libcrypto")
if(ZCX_WITH_VERBS)
  string(APPEND ZCX_PC_REQUIRES_PRIVATE " libibverbs librdmacm")
endif()
configure_file(${PROJECT_SOURCE_DIR}/cmake/zcx.pc.in ${PROJECT_BINARY_DIR}/zcx.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/zcx.pc DESTINATION ${ZCX_PC_DIR} COMPONENT dev)
