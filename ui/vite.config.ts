/// <reference types="vitest/config" />
import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';

// Node's `process`, without pulling in all of @types/node for two lookups.
declare const process: { env: Record<string, string | undefined> };

// Tauri loads `dist/` (build) or the dev server on 1420 (dev).
const host = process.env.TAURI_DEV_HOST;

export default defineConfig({
  plugins: [svelte()],
  base: './',
  clearScreen: false,
  server: {
    port: 1420,
    strictPort: true,
    host: host || false,
    hmr: host ? { protocol: 'ws', host, port: 1421 } : undefined,
    watch: { ignored: ['**/src-tauri/**'] },
  },
  envPrefix: ['VITE_', 'TAURI_ENV_'],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // WebView2 (Chromium), WebKitGTK and WKWebView of supported systems.
    target: ['es2021', 'chrome105', 'safari15'],
    sourcemap: false,
    // No inline `data:` module preload polyfill or assets that a strict CSP would refuse.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
  // Svelte's browser build for component tests (not its server build).
  resolve: process.env.VITEST ? { conditions: ['browser'] } : undefined,
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.ts'],
    setupFiles: ['src/test/setup.ts'],
  },
});
