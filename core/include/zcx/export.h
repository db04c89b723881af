// ZCX_EXPORT marks the public API. libzcx.so is built with -fvisibility=hidden: only what carries
// this macro is exported, everything in zcx::detail and the transports stays internal.
#pragma once

#if !defined(__cplusplus) || __cplusplus < 202002L
#error "zcx needs C++20: compile with -std=c++20 (CMake: zcx::zcx sets cxx_std_20 for you)"
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ZCX_EXPORT [[gnu::visibility("default")]]
#else
#define ZCX_EXPORT
#endif
